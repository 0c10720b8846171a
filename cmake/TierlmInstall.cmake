# Installs libtierlm, its headers and a CMake package so apps can find_package(tierlm).
# Inside a wheel everything lives under the tierlm/ package directory.
include(CMakePackageConfigHelpers)
if(SKBUILD)
  set(TIERLM_LIB_DIR tierlm)
  set(TIERLM_INCLUDE_DIR tierlm/include)
  set(TIERLM_CMAKE_DIR tierlm/lib/cmake/tierlm)
else()
  include(GNUInstallDirs)
  set(TIERLM_LIB_DIR ${CMAKE_INSTALL_LIBDIR})
  set(TIERLM_INCLUDE_DIR ${CMAKE_INSTALL_INCLUDEDIR})
  set(TIERLM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tierlm)
endif()

install(TARGETS tierlm EXPORT tierlmTargets
  LIBRARY DESTINATION ${TIERLM_LIB_DIR}
  INCLUDES DESTINATION ${TIERLM_INCLUDE_DIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/cpp/include/tierlm DESTINATION ${TIERLM_INCLUDE_DIR})
install(EXPORT tierlmTargets NAMESPACE tierlm:: DESTINATION ${TIERLM_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tierlmConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/tierlmConfig.cmake INSTALL_DESTINATION ${TIERLM_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/tierlmConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/tierlmConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/tierlmConfigVersion.cmake DESTINATION ${TIERLM_CMAKE_DIR})
