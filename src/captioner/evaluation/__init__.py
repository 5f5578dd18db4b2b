"""Scores: corpus BLEU (`bleu`), the coco-caption suite, diversity and the human ceiling
(`cocoeval`), references and tables (`scores`), the `evaluate` stage's whole scoring
(`report`), the HTML gallery (`gallery`) and attention maps (`attention_map`)."""
