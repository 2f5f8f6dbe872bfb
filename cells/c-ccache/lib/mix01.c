/* A C stage: an integer hash step with its own constant. */
long calc_mix01(long x) {
    unsigned long h = (unsigned long)x * 2654435762UL;
    h ^= h >> 14;
    return (long)(h % 1000003UL);
}
