"""The environments; each module holds a single env and its natively batched VectorEnv."""
