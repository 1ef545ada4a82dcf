"""Offline pretraining corpus: Debian-packaged English text -> cleaned documents -> splits -> tokenizers."""
