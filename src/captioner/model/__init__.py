"""The captioning model: its builders and layer names (`build`), a trained model one word at a
time (`step`, the public step API every decoding loop uses) and the model folder (`folder`, the
one owner of its file names and of meta.json and decoding.json)."""
