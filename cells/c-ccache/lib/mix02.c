/* A C stage: an integer hash step with its own constant. */
long calc_mix02(long x) {
    unsigned long h = (unsigned long)x * 2654435763UL;
    h ^= h >> 15;
    return (long)(h % 1000003UL);
}
