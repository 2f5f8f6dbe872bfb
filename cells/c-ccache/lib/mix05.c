/* A C stage: an integer hash step with its own constant. */
long calc_mix05(long x) {
    unsigned long h = (unsigned long)x * 2654435766UL;
    h ^= h >> 18;
    return (long)(h % 1000003UL);
}
