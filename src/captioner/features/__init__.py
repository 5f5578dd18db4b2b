"""Image features: decoding any image file (`images`), the pre-trained CNNs with their own
preprocessing (`backbones`), batched extraction (`extract`) resumable through `shards`, and the
Parquet feature file (`store`), the one writer and reader of `data/features/<backbone>.parquet`.

Training and evaluation read features through `store` alone, so they never depend on image
decoding or the backbones."""
