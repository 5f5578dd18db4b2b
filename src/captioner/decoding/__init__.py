"""Captions from a trained model: beam search and greedy decoding (`search`), sampling
(`sample`, for self-critical training), CIDEr-D over many captions at once (`cider`: the
self-critical reward and consensus reranking's utility), consensus (minimum-Bayes-risk)
reranking of a beam's candidates (`consensus`), and a model folder loaded with its backbone and
decoding settings, ready to caption (`captioner`)."""
