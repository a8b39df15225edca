"""Models: where a base lives and how it loads (`loading`), PEFT methods, the prompt (labels <-> instruction <->
answers) and the shared-prefix cache."""
