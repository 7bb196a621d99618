"""What a user of a trained model asks for, above the token-level samplers: text from prompts and infilling
templates, image completion, picture grids and reverse-process strips, and plots of a learned schedule. The CLI
and a notebook call the same functions."""
