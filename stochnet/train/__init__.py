"""The training driver: the loop, atomic checkpoints with exact resume, progress, multi-process set-up."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import SetupError, TrainRun, evaluate_accuracy, train
from .rebuild import model_from_checkpoint

__all__ = ["CheckpointError", "SetupError", "TrainRun", "evaluate_accuracy", "load_checkpoint", "model_from_checkpoint",
           "save_checkpoint", "train"]
