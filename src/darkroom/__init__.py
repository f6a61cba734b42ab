"""darkroom: a self-hosted image generation service speaking the krea-2-turbo task API."""

__version__ = "0.1.0"
