mod signatures;
