"""The stages of the method. Stages never import each other; they meet through folders on disk."""

from __future__ import annotations
