"""The paper's figures (``/work/shared/paper.txt``: Chen, Sun, Xu, "Defending Spiking Neural
Networks against Adversarial Attacks through Image Purification"), as data for the results
page. Accuracies in percent. The paper's method is "Ours" (the purifier in front of its
SENet18-SNN); every white-box figure is under its own protocol, which attacks the classifier
and applies the purifier afterwards (this study's ``classifier-only``), except BPDA+EOT.

Where the extracted text of a table leaves a cell blank the figure is absent here (``None``
is never a number on the page).
"""

from __future__ import annotations

SOURCE = "Chen, Sun, Xu: Defending SNNs against adversarial attacks through image purification"
DATASETS = ("SVHN", "CIFAR-10", "CIFAR-100")
EPS_TEXT = "ε = 8/255"

# Table 2 (and section 5.2.1 for the Gaussian column): the purifier ("Ours"), eps 8/255,
# I-FGSM / MI-FGSM / PGD 7 steps of 2/255, CW 50 steps of 0.01, Gaussian noise level 20.
# MI-FGSM on SVHN and CIFAR-10 is blank in the text.
TABLE2 = {
    "clean": {"SVHN": 89.98, "CIFAR-10": 89.05, "CIFAR-100": 66.98},
    "gaussian": {"SVHN": 90.88, "CIFAR-10": 79.05, "CIFAR-100": 41.05},
    "fgsm": {"SVHN": 82.96, "CIFAR-10": 75.63, "CIFAR-100": 43.14},
    "ifgsm": {"SVHN": 89.97, "CIFAR-10": 70.71, "CIFAR-100": 42.89},
    "mifgsm": {"CIFAR-100": 37.52},
    "pgd": {"SVHN": 88.35, "CIFAR-10": 74.16, "CIFAR-100": 46.04},
    "cw": {"SVHN": 90.75, "CIFAR-10": 83.69, "CIFAR-100": 56.31},
}

# Table 4: advanced attacks at eps 8/255 ("Ours").
TABLE4 = {
    "apgd-ce": {"SVHN": 89.03, "CIFAR-10": 71.03, "CIFAR-100": 43.21},
    "autoattack": {"SVHN": 90.58, "CIFAR-10": 71.48, "CIFAR-100": 43.07},
    "bpda-eot": {"SVHN": 88.75, "CIFAR-10": 69.48, "CIFAR-100": 40.76},
}

# Table 1: MLF ablation, a ResNet-14 SNN on MNIST without purifier, eps 0.2.
TABLE1_DATASET = "MNIST, ResNet-14 SNN, no purifier, ε = 0.2"
TABLE1_EPS = 0.2
TABLE1 = {
    ("fgsm", 3): 79.11,
    ("fgsm", 2): 72.57,
    ("fgsm", 1): 71.67,
    ("pgd", 3): 45.86,
    ("pgd", 2): 37.51,
    ("pgd", 1): 27.45,
}

# Table 3: transfer attacks on CIFAR-10 at eps 8/255 from two surrogate SNNs (mean of three
# runs). Keys: (source architecture, attack, PGD steps or None) -> the purifier's figure.
TABLE3_DATASET = "CIFAR-10, ε = 8/255"
TABLE3_SOURCES = {"wrn16_8_snn": "WideResNet16-8-SNN", "resnet20_snn": "ResNet20-SNN"}
TABLE3 = {
    ("wrn16_8_snn", "fgsm", None): 79.86,
    ("wrn16_8_snn", "pgd", 5): 80.95,
    ("wrn16_8_snn", "pgd", 10): 78.96,
    ("wrn16_8_snn", "pgd", 20): 78.85,
    ("resnet20_snn", "fgsm", None): 79.99,
    ("resnet20_snn", "pgd", 5): 80.96,
    ("resnet20_snn", "pgd", 10): 79.29,
    ("resnet20_snn", "pgd", 20): 79.36,
}

# Figure 4 gives bars without numbers; section 5.2.4 gives the average.
FIGURE4_REDUCTION = 93.9  # % less training time than adversarial training, over 3 datasets

# Figure 5 (PGD, step 2/255, SENet18-SNN): the figures its text states.
FIGURE5_STEPS = (
    "CIFAR-100, ε = 8/255, PGD^5 to PGD^50: the purifier stays above 40 %",
    "SVHN, ε = 16/255, PGD^5 to PGD^50: above 70 %",
)
FIGURE5_EPS = {
    "CIFAR-100": ((1 / 255, 59.25), (16 / 255, 44.64)),
    "SVHN": ((1 / 255, 90.09), (16 / 255, 82.14)),
}


def figures(table: dict[str, float]) -> str:
    """``"SVHN 89.03 · CIFAR-10 71.03 · CIFAR-100 43.21"`` (absent datasets left out)."""
    parts = [f"{d} {table[d]:.2f}" for d in DATASETS if table.get(d) is not None]
    return " · ".join(parts) if parts else "not given"
