"""speechprune: measure how redundant the LLM decoder of a SpeechLLM is, remove the redundant
layers, heal the pruned model and evaluate what it still does.

Pipeline: data -> build / train SpeechLLM -> scan -> prune -> heal -> evaluate -> compare / report.
Layer indices are 0-based and blocks are end-exclusive, [start, end), everywhere.
"""

__version__ = "0.1.0"
