"""Import stubs for running MMPose's own code without its optional dependencies.

MMPose's registry imports xtcocotools, mmdet, mmcv's compiled ops and pkg_resources at module level;
the golden scripts never call them. `install_import_stubs` puts empty modules in their place, whose
classes raise if anything does call them. It imports nothing but the standard library, so that every
golden script can use it whatever numpy its process has (make_training_goldens' child runs numpy 1).
"""

from __future__ import annotations

import sys
import types


def install_import_stubs() -> None:
    """Empty stand-ins for modules MMPose imports at module level but never calls here."""

    def module(name: str, **attrs) -> None:
        stub = types.ModuleType(name)
        stub.__dict__.update(attrs)
        sys.modules[name] = stub

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("an import stub of tools/_mmpose_stubs.py was called")

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name):  # mmengine then finds the package on sys.path
        raise DistributionNotFound(name)

    module("xtcocotools")
    module("xtcocotools.coco", COCO=Unavailable)
    module("xtcocotools.cocoeval", COCOeval=Unavailable)
    module("xtcocotools.mask")
    module("mmdet")
    module("mmdet.utils", ConfigType=object, OptConfigType=object, reduce_mean=Unavailable)
    module("mmcv.ops", MultiScaleDeformableAttention=Unavailable)
    module("pkg_resources", DistributionNotFound=DistributionNotFound, get_distribution=get_distribution)
