"""MedVQA by fusion: a frozen vision encoder, a Q-Former and a causal language model with LoRA, trained in three
stages (captions, general VQA, radiology VQA) and evaluated with closed/open accuracy beside two baselines."""
