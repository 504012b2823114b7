"""InternImage vision backbones with a compiler-free DCNv3 operator for CPU and GPU."""

__version__ = "0.1.0"
