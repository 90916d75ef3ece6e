"""Lightning code that drives any Task: one LightningModule, one LightningDataModule, Trainer assembly."""
