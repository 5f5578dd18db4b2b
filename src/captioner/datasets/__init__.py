"""Data: readers of caption data sets on disk (`readers`, with `flickr8k`, `karpathy`, `kaggle`
and their shared `common` parts), the generated scenes data set (`scenes`), caption cleaning and
the vocabulary (`text`), and captions as padded integer arrays (`sequences`)."""
