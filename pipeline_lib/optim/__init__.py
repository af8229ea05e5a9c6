"""AdamW written out (dense and row-sparse), bit for bit torch's arithmetic, for the hand-stepped training loops."""
