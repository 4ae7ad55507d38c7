"""Image listing, decoding, transforms and datasets shared by every stage of the pipeline."""
from vqgan_lc.data.datasets import ImageDataset, build_dataset, collate_skip_corrupt
from vqgan_lc.data.demo import DemoCrops, demo_photos
from vqgan_lc.data.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    ImageRecord,
    class_names,
    is_image_path,
    list_images,
    load_image,
)
from vqgan_lc.data.transforms import (
    EvalTransform,
    TrainTransform,
    center_crop,
    from_tensor,
    item_generator,
    random_crop,
    random_hflip,
    resize_short_side,
    to_tensor,
    to_uint8,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DemoCrops",
    "EvalTransform",
    "ImageDataset",
    "ImageError",
    "ImageRecord",
    "TrainTransform",
    "build_dataset",
    "center_crop",
    "class_names",
    "collate_skip_corrupt",
    "demo_photos",
    "from_tensor",
    "is_image_path",
    "item_generator",
    "list_images",
    "load_image",
    "random_crop",
    "random_hflip",
    "resize_short_side",
    "to_tensor",
    "to_uint8",
]
