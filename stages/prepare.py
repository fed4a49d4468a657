"""DVC stage `prepare@<model>`: train (digits_cnn) or instantiate and re-estimate BatchNorm (torchvision): a PyTorch checkpoint."""
from pipeline import steps
from pipeline.cli import model_stage

if __name__ == "__main__":
    model_stage(steps.prepare, __doc__)
