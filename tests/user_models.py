"""Small real models of the kinds users bring (exported to ONNX with torch), and real images for them:
the photographs scikit-image ships, cropped and written to a folder with PIL as a user's files would be."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg")


def write_images(folder: Path, count: int, size=(96, 128), classes: Sequence[str] = (), suffixes=(".jpg", ".png"), seed: int = 0) -> list:
    """``count`` seeded crops of real photographs as image files under ``folder`` (in class folders
    named ``classes``, each class its own photograph, when given); sizes vary around ``size``."""
    from importlib.resources import files

    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(str(files("skimage") / "data" / name)).convert("RGB")) for name in PHOTOS]
    written = []
    for index in range(count):
        label = index % len(classes) if classes else None
        photo = photos[label if label is not None else int(rng.integers(len(photos)))]
        height = int(size[0] * rng.uniform(0.8, 1.2))
        width = int(size[1] * rng.uniform(0.8, 1.2))
        top = int(rng.integers(0, photo.shape[0] - height))
        left = int(rng.integers(0, photo.shape[1] - width))
        target = folder / (classes[label] if classes else "") / f"img_{index:04d}{suffixes[index % len(suffixes)]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[top:top + height, left:left + width]).save(target)
        written.append(target)
    return written


def export(module, example: Dict[str, np.ndarray], path: Path, outputs: Sequence[str], dynamic: Dict[str, Dict[int, str]]) -> Path:
    import torch

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in example.values()), str(path), input_names=list(example),
                          output_names=list(outputs), dynamic_axes={**dynamic, **{o: {0: "batch"} for o in outputs}},
                          opset_version=17, dynamo=False)
    return path


def probability_map_model(path: Path) -> Path:
    """A text-detector-shaped model: image -> [N, 1, H/2, W/2] probability map. One feature channel
    carries a huge constant, so per-tensor INT8 ranges leave the informative channels nothing."""
    import torch
    from torch import nn

    class ProbabilityMap(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8, 1, 3, padding=1)
            with torch.no_grad():
                self.features.bias[7] = 4000.0  # an outlier channel the head ignores
                self.head.weight[:, 7] = 0.0
                self.head.weight *= 4.0
                self.head.bias.fill_(-4.0)  # mostly background: low probabilities, as a detector's map

        def forward(self, image):
            return torch.sigmoid(self.head(torch.relu(self.features(image))))

    return export(ProbabilityMap(), {"image": np.zeros((1, 3, 64, 64), np.float32)}, path, ["prob_map"], {"image": {0: "batch"}})


def token_state_model(path: Path) -> Path:
    """Two inputs: int64 token ids [N, 6] and a state [8] without batch axis, added to every sample's scores."""
    import torch
    from torch import nn

    class TokensAndState(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(50, 16)
            self.mix = nn.Linear(16, 8)

        def forward(self, tokens, state):
            return self.mix(torch.relu(self.embed(tokens)).mean(dim=1)) + state

    example = {"tokens": np.zeros((1, 6), np.int64), "state": np.zeros(8, np.float32)}
    return export(TokensAndState(), example, path, ["scores"], {"tokens": {0: "batch"}})


def recognizer_model(path: Path, classes: int = 12) -> Path:
    """A CTC-style text recognizer: [N, 3, 48, W] -> per-step class scores [N, W/4, classes]."""
    import torch
    from torch import nn

    class Recognizer(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.classify = nn.Linear(32, classes)

        def forward(self, image):
            features = self.body(image).mean(dim=2)  # [N, 32, W/4]: height pooled away
            return self.classify(features.permute(0, 2, 1)) * 8.0  # [N, T, classes]

    return export(Recognizer(), {"image": np.zeros((1, 3, 48, 160), np.float32)}, path, ["steps"], {"image": {0: "batch"}})


def small_classifier(path: Path, classes: int = 3) -> Path:
    """A small CNN classifier on [N, 3, 64, 64] images."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))
    return export(module, {"input": np.zeros((1, 3, 64, 64), np.float32)}, path, ["logits"], {"input": {0: "batch"}})
