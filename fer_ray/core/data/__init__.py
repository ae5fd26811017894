"""Face datasets: readers, synthetic faces, splits, tensor cache, batched augmentation."""

from fer_ray.core.data.records import EXPRESSIONS, DataError, FaceDataset, FaceImage

__all__ = ["EXPRESSIONS", "DataError", "FaceDataset", "FaceImage"]
