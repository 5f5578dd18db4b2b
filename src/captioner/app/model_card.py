"""The model card of a released model folder: `README.md` in the Hugging Face layout (YAML front
matter, then prose), built from plain values so any stage or script can write one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from captioner.features.backbones import LICENCES
from captioner.model.folder import DECODING_FILE, META_FILE, VOCAB_FILE

__all__ = ["DATASET_TERMS", "CardFacts", "front_matter", "render_card"]

DATASET_TERMS = {
    "scenes": "the embedded generated scenes (coloured shapes on plain backgrounds, drawn by "
              "`generate_scenes`): a toy for checking the pipeline, not a photo captioner",
    "flickr8k": "Flickr8k (Hodosh et al., 2013): its images are for research use only under the "
                "data set's terms; a model trained on it inherits that restriction",
    "flickr30k": "Flickr30k (Young et al., 2014): its images are for non-commercial research use "
                 "under the data set's terms; a model trained on it inherits that restriction",
    "coco": "MS COCO (Lin et al., 2014; Karpathy split): annotations CC BY 4.0, images under the "
            "Flickr terms of use of their owners; check both before any use beyond research",
}


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states; metrics and params are nested mappings as in their files."""

    name: str
    dataset: str                      # "scenes" | "flickr8k" | "flickr30k" | "coco"
    data_root: str
    split_images: Mapping[str, int]   # images per split (train, dev, test)
    eval_split: str
    eval_images: int
    backbone: str
    meta: Mapping[str, Any]           # the model folder's meta.json
    params: Mapping[str, Any]         # model, train, scst, evaluate sections
    decoding: Mapping[str, Any]
    metrics: Mapping[str, Any]        # metrics/eval.json
    commit: str


def front_matter(f: CardFacts) -> dict[str, Any]:
    """Hugging Face model-card metadata, with the data set as a machine-readable field."""
    coco = f.metrics.get("coco", {})
    results = [{"type": f"bleu{n}", "name": f"BLEU-{n} (nltk corpus)", "value": f.metrics[f"bleu{n}"]}
               for n in range(1, 5) if f"bleu{n}" in f.metrics]
    results += [{"type": f"coco_{k}", "name": f"coco {k} (pycocoevalcap)", "value": v} for k, v in coco.items()]
    return {
        "license": "mit" if f.dataset == "scenes" else "other",
        "library_name": "keras",
        "pipeline_tag": "image-to-text",
        "tags": ["image-captioning", "dvc", f.meta.get("kind", "merge"), f.backbone],
        "datasets": [f.dataset],
        "dataset": f.dataset,
        "toy": f.dataset == "scenes",
        "base_model": f.backbone,
        "model-index": [{"name": f.name, "results": [{
            "task": {"type": "image-to-text"},
            "dataset": {"name": f.dataset, "type": f.dataset, "split": f.eval_split},
            "metrics": results,
        }]}],
    }


def _table(rows: Mapping[str, Any]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in rows.items())])


def render_card(f: CardFacts) -> str:
    """The whole README.md: front matter, what it is, data, metrics, params, use and limits."""
    bleu = {f"BLEU-{n}": f.metrics[f"bleu{n}"] for n in range(1, 5) if f"bleu{n}" in f.metrics}
    coco = dict(f.metrics.get("coco", {}))
    blind = f.metrics.get("blind_baseline", {})
    splits = ", ".join(f"{k} {v}" for k, v in sorted(f.split_images.items()))
    params = {f"{s}.{k}": v for s, sec in f.params.items() for k, v in sec.items()}
    limits = [
        f"Trained on {DATASET_TERMS.get(f.dataset, f.dataset)}.",
        "Captions are short English sentences in the style of the training captions; the model "
        "knows only the training vocabulary and describes unfamiliar scenes wrongly with confidence.",
        "Not evaluated for fairness, safety or descriptions of people; do not use for accessibility "
        "or any decision about a person without human review.",
    ]
    if f.dataset == "scenes":
        limits.insert(0, "**Toy model.** It has only seen generated shapes: on real photos its "
                         "captions are meaningless.")
    return "\n".join([
        "---", yaml.safe_dump(front_matter(f), sort_keys=False).rstrip(), "---", "",
        f"# {f.name}", "",
        f"An image captioner: {f.backbone} image features and a {f.meta.get('kind', 'merge')} LSTM decoder "
        f"({len(f.meta.get('members', []))} member(s)), trained by the `captioner` DVC pipeline at git "
        f"commit `{f.commit}`.", "",
        "Files: " + ", ".join(f"`{m}`" for m in [*f.meta.get("members", []), VOCAB_FILE, META_FILE])
        + f", `{DECODING_FILE}` (the decoding settings the evaluation used), this card.", "",
        "## Data", "",
        f"- data set: `{f.dataset}` (`data.root: {f.data_root}`); images per split: {splits}",
        f"- backbone: {LICENCES.get(f.backbone, f.backbone)}", "",
        f"## Evaluation ({f.eval_split} split, {f.eval_images} images)", "",
        "| metric | model | blind baseline |", "|---|---|---|",
        *(f"| {k} (nltk corpus) | {v} | {blind.get(k.lower().replace('-', ''), '')} |" for k, v in bleu.items()),
        *(f"| {k} (pycocoevalcap) | {v} | {blind.get('coco', {}).get(k, '')} |" for k, v in coco.items()),
        "",
        "The blind baseline captions every image with the most frequent training caption."
        + (" Dev-split figures are optimistic: dev also chose the best epoch and the settings."
           if f.eval_split == "dev" else ""), "",
        "## Decoding", "", _table(f.decoding), "",
        "## Parameters", "", _table(params), "",
        "## Intended use", "",
        "Research and teaching: captioning experiments, and a worked example of a reproducible DVC "
        "pipeline with shared experiments and a model registry.", "",
        "## Limitations", "", *(f"- {x}" for x in limits), "",
        "## How to use", "", "```bash",
        'pip install "captioner[cpu] @ git+<the project\'s git URL>"   # or [gpu]; [serve,cpu] for the HTTP service',
        f"captioner caption photo.jpg --model path/to/this/folder   # reads {DECODING_FILE}", "```", "",
    ])
