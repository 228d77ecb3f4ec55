"""market-data-store: an asyncio write path for market data with backpressure feedback."""
