"""The TADA codec: waveform decoder (and its streaming form), encoder, aligner."""
