"""Captions from a trained model: beam search and greedy decoding (`search`), sampling
(`sample`, for self-critical training), and a model folder loaded with its backbone and
decoding settings, ready to caption (`captioner`)."""
