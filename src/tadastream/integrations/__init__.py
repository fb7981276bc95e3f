"""Native integrations with voice-agent frameworks, each an optional extra built on the framework's
own base classes:

* :mod:`.pipecat` (``tadastream[pipecat]``): a Pipecat TTS service on the server's WebSocket;
* :mod:`.livekit` (``tadastream[livekit]``): a LiveKit Agents TTS plugin (streaming, aligned transcript);
* :mod:`.wyoming` (``tadastream[wyoming]``): ``tadastream wyoming``, the Wyoming protocol for Home Assistant.

Importing this package imports no framework; each submodule imports its own.
"""
