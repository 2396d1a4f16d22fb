// Empty: the functions are static inline in include/CCallgrind.h.
