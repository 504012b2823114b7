"""``import internimage`` and the core modules need none of the optional extras."""

from __future__ import annotations

import subprocess
import sys

EXTRAS = ("transformers", "torchvision", "pycocotools")


def test_the_core_imports_without_the_seg_and_det_extras() -> None:
    # The extras' packages are made unimportable, as if they were not installed; the core
    # (model, trainer, command line, drawing, the scenes) must import and build a model anyway.
    program = (
        f"import sys\nfor name in {EXTRAS!r}:\n    sys.modules[name] = None\n"
        "import internimage, internimage.train.trainer, internimage.cli.main\n"
        "import internimage.draw, internimage.data.scenes, internimage.train.tasks\n"
        # The tasks' settings and presets (the training config's sections) need no extra either.
        "from internimage.train.config import PRESETS, TrainConfig\n"
        "assert TrainConfig().segmentation == PRESETS['ade20k'].segmentation\n"
        "assert PRESETS['coco-1x'].detection.min_sizes == (800,)\n"
        "internimage.create_model('internimage_atto', depths=(1, 1, 1, 1))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
