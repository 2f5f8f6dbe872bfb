/* A C stage: an integer hash step with its own constant. */
long calc_mix03(long x) {
    unsigned long h = (unsigned long)x * 2654435764UL;
    h ^= h >> 16;
    return (long)(h % 1000003UL);
}
