"""Training one run: the model, the task, the loop, evaluation, the discretization gap, sharpening, torchrun."""
