/* A C stage: an integer hash step with its own constant. */
long calc_mix00(long x) {
    unsigned long h = (unsigned long)x * 2654435761UL;
    h ^= h >> 13;
    return (long)(h % 1000003UL);
}
