"""
Memory-aware swapping: each model's GPU memory need (declared, learned from
NVML after a load, or estimated from its GGUF file), the device budgets, and
the planner that evicts the least recently used idle models until a target
fits.

    - L{llamaswap.memory.gguf}: the GGUF header reader;
    - L{llamaswap.memory.estimate}: the estimate from a command line;
    - L{llamaswap.memory.planner}: the pure fit planner and its
      L{ISwapPlanner <llamaswap.interfaces.ISwapPlanner>} adapter;
    - L{llamaswap.memory.store}: the learned needs' state file;
    - L{llamaswap.memory.oom}: out-of-memory messages in a start's output;
    - L{llamaswap.memory.manager}: needs, budgets, learning, the retry.
"""
