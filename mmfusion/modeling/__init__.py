"""The network: encoders + fusion + head (`classifier`), its LightningModule (`module`) and metrics."""
