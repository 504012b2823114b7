"""Looking inside trained models: where DCNv3 samples for given pixels (the paper's Fig. 5).

Drawing needs matplotlib (``pip install internimage[train]``); it is imported only when drawing.
"""

from internimage.analysis.sampling import (
    ALIGNMENTS,
    Alignment,
    SamplingMap,
    feature_to_input,
    input_to_feature,
    render_sampling_maps,
    sampling_locations,
    save_sampling_maps,
    stage_stride,
)

__all__ = [
    "ALIGNMENTS",
    "Alignment",
    "SamplingMap",
    "feature_to_input",
    "input_to_feature",
    "render_sampling_maps",
    "sampling_locations",
    "save_sampling_maps",
    "stage_stride",
]
