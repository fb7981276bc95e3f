"""Neural-network building blocks shared by the LLM head and the codec."""
