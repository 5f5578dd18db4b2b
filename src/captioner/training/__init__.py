"""Training: batches in memory or streamed from the feature file (`batches`), the cross-entropy
fit of one member (`fit`), the ensemble run of the `train` stage (`ensemble`), precision
(`precision`), curves (`curves`), resumable checkpoints (`checkpoint`) and self-critical
training toward CIDEr-D (`scst`, rewarded by captioner.decoding.cider)."""
