/* A C stage: an integer hash step with its own constant. */
long calc_mix04(long x) {
    unsigned long h = (unsigned long)x * 2654435765UL;
    h ^= h >> 17;
    return (long)(h % 1000003UL);
}
