"""Task presets: dataset formats, prompt templates, rewards and metrics (see docs/)."""
