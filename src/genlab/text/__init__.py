"""Text for the GPT model: tokenizers (`tokenizer`), data and batches (`data`), choosing tokens
(`sampling`), and the glue that registers the text modality in `genlab.runs` (`modality`)."""
