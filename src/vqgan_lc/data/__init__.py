"""Image listing, decoding, transforms, datasets and the per-image array cache shared by every stage."""
from vqgan_lc.data.cache import (
    CacheDataset,
    CacheStore,
    EncodedItems,
    ShardedRows,
    encode_in_memory,
    write_cache,
)
from vqgan_lc.data.datasets import ImageDataset, build_dataset, collate_skip_corrupt
from vqgan_lc.data.demo import DemoCrops, demo_photos
from vqgan_lc.data.grid import save_comparison_grid, save_grid, save_png
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
    "CacheDataset",
    "CacheStore",
    "DemoCrops",
    "EncodedItems",
    "EvalTransform",
    "ImageDataset",
    "ImageError",
    "ImageRecord",
    "ShardedRows",
    "TrainTransform",
    "build_dataset",
    "center_crop",
    "class_names",
    "collate_skip_corrupt",
    "demo_photos",
    "encode_in_memory",
    "from_tensor",
    "is_image_path",
    "item_generator",
    "list_images",
    "load_image",
    "random_crop",
    "random_hflip",
    "resize_short_side",
    "save_comparison_grid",
    "save_grid",
    "save_png",
    "to_tensor",
    "to_uint8",
    "write_cache",
]
