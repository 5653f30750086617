"""FP8 (E4M3) post-training quantisation of the stripped DiT: max calibration and Q/DQ linears."""
