"""No root, no build: the scheduler library, the model, the ipvsadm language, files and settings."""
