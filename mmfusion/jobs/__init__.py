"""Jobs on top of the training core: train, launch (supervisor/worker), tune, zoo, reproduce."""
