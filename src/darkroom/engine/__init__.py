"""The engine: turns batches of prompts into images. Heavy imports (torch, diffusers) live in
`krea2` and `tiny` only, so API processes never load them."""
