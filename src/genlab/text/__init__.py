"""Text for the GPT model: tokenizers (`tokenizer`), data and batches (`data`), choosing tokens
(`sampling`); the text modality that uses them is `genlab.modalities.text`."""
