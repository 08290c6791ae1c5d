"""How good a VAE's samples are, judged by the sample classifier of its dataset
(training/classifier.py): decode `samples` draws from the prior N(0, I), then

- the Frechet distance between the classifier's penultimate features of the test images and of
  the samples (FID's formula, Heusel et al. 2017, in this classifier's feature space: NOT
  comparable with Inception-based FID numbers); lower is better, and the distance between
  training and test images (`reference`) is about what a perfect model would score;
- the classifier's confidence on the samples (its mean largest class probability): blurry or
  in-between shapes lower it;
- the class balance: the share of samples predicted as each class; a prior that gives a class
  little room shows up as a small share (MNIST's and Fashion-MNIST's classes are near 10 % each).

The samples are the decoder's pixel means, as /generate returns them, at temperature 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from training.classifier import CLASSIFIER_DIR, Classifier, ClassifierError, load_classifier
from training.model import AutoEncoder
from training.sample_metrics import frechet_distance, prediction_summary

DEFAULT_SAMPLES = 10_000
CLASSIFIER_IMAGE_SHAPE = (1, 28, 28)

Decoder = Callable[[Tensor], Tensor]  # z (N, latent) -> images (N, 1, 28, 28) in [0, 1]


@torch.no_grad()
def judge_samples(
    decode: Decoder,
    latent_dim: int,
    classifier: Classifier,
    test_images: Tensor,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """The sample-quality numbers (module docstring) of `decode` over `samples` prior draws."""
    if samples < 2 or len(test_images) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples and 2 test images")
    started = time.perf_counter()
    z = torch.randn(samples, latent_dim, generator=torch.Generator().manual_seed(seed))
    images = torch.cat(
        [decode(zb).reshape(len(zb), *CLASSIFIER_IMAGE_SHAPE) for zb in z.split(batch_size)]
    )
    sample_feats, sample_probs = classifier.features_and_probabilities(images)
    test_feats, test_probs = classifier.features_and_probabilities(test_images)
    return {
        "samples": samples,
        "seed": seed,
        "temperature": 1.0,
        "frechet_distance": frechet_distance(test_feats, sample_feats),
        **prediction_summary(sample_probs),
        "test_set": prediction_summary(test_probs),
        "classifier": {
            "dataset": classifier.dataset,
            "test_accuracy": classifier.info.get("test_accuracy"),
            "reference": classifier.info.get("reference"),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }


def sample_quality_problem(dataset: str, image_shape: tuple[int, ...]) -> str | None:
    """Why a model's samples cannot be judged; None when they can."""
    known = sorted(p.stem for p in CLASSIFIER_DIR.glob("*.npz"))
    if dataset not in known:
        return f"no sample classifier for dataset {dataset!r} (there are: {', '.join(known)})"
    if tuple(image_shape) != CLASSIFIER_IMAGE_SHAPE:
        return (
            f"the sample classifier takes 1 x 28 x 28 images; this model makes "
            f"{' x '.join(map(str, image_shape))}"
        )
    return None


def model_sample_quality(
    model: AutoEncoder,
    dataset: str,
    test_images: Tensor,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """judge_samples for a trained training.model.AutoEncoder (a VAE), or {"skipped": why}."""
    config = model.config
    problem = sample_quality_problem(dataset, config.image_shape)
    if problem:
        return {"skipped": problem}
    try:
        classifier = load_classifier(dataset)
    except ClassifierError as exc:
        return {"skipped": str(exc)}
    model.eval()

    def decode(z: Tensor) -> Tensor:
        device = next(model.parameters()).device
        return torch.sigmoid(model.decode_logits(z.to(device))).cpu()

    return judge_samples(decode, config.latent_dim, classifier, test_images.cpu(), samples, seed)
