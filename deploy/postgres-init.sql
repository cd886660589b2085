-- Run once by the postgres image on an empty volume: Label Studio keeps its own database beside samx's.
CREATE DATABASE labelstudio OWNER samx;
