"""Jobs on top of the training core (`mmfusion.training.fit`), each one MLflow run or a family of them.

    train.py      train(cfg) -> TrainResult: open the run, log config and preprocessing, fit here or via the supervisor
    outputs.py    what a trained model leaves in its run: predictions, plots, ONNX, the pyfunc model
    launch.py     the supervisor of a multi-process job on one machine, its job file and result file
    worker.py     `python -m mmfusion.jobs.worker JOBFILE`: one rank of such a job
    tune/         Optuna studies whose trials are train runs
    zoo.py        every variant x every seed, then compared
    reproduce.py  a logged run trained again from its records, and the difference
"""
