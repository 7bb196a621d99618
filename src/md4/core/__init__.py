"""The method, tensors in and tensors out: token ids and the mask id, the training noise and its layout over
processes, masking schedules, the masked-diffusion base and the MD4 and GenMD4 kinds (paper Sec. 2-6)."""
